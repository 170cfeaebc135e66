"""``python -m handjax.data preview --out sheet.png``: see ``handjax.data.preview``."""

from handjax.data.preview import main

if __name__ == "__main__":
    main()
