"""The study's protocol, shared by every experiment (``get_config`` returns it).

Each study cell (``experiments/<model>_<loss>.py``) imports this file and overrides the
backbone and the loss. Run one with, e.g.::

    python launch.py --config experiments/vgg19_custom.py
    python launch.py --config experiments/vgg19_custom.py:smoke   # 2-core CPU, < 2 min

Override any field from the command line: ``--config.train.lr2=3e-5``; a misspelt key is
an error. ``--config.data.root=/path/to/photos`` trains on your own ImageFolder of photos
(``normal/``, ``heberden/``, ``ra/``) instead of the embedded synthetic hands.
"""
import ml_collections

from handjax.run import cell_config

def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.n_folds = 5

    c.data = ml_collections.ConfigDict()
    c.data.root = ""            # "" -> the embedded synthetic hands; else an ImageFolder root
    c.data.class_map = ""       # e.g. "healthy:normal,nodes:heberden,rheuma:ra"
    c.data.on_error = "raise"   # or "skip": leave unreadable photos out, with a warning
    c.data.n_per_class = 50     # synthetic set size (the study had ~40 photos per class)
    c.data.image_size = 224
    c.data.dedup = True         # near-duplicate photos share a fold (no train/test leak)
    c.data.views = 4            # precomputed views per image: the photo + 3 augmented draws

    c.model = ml_collections.ConfigDict()
    c.model.name = "vgg19"
    c.model.weights = "imagenet"   # "imagenet" | "none" (random) | path to a Keras .h5 file
    c.model.split = ""             # "" -> unfreeze the model's top block(s) in phase 2
    c.model.dtype = "float32"      # "bfloat16" on GPU/TPU
    c.model.conv_impl = "auto"     # "auto" | "xla" | "im2col" | "mmgrad" | "winograd" (auto: by backend/map size)

    c.head = ml_collections.ConfigDict(dict(hidden=256, dropout=0.5))
    c.loss = ml_collections.ConfigDict(dict(name="categorical", ce_weight=1.0,
                                            label="categorical"))

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16
    c.train.epochs1 = 10        # phase 1: head only, backbone frozen
    c.train.lr1 = 1e-3
    c.train.epochs2 = 10        # phase 2: top block(s) + head
    c.train.lr2 = 1e-5
    c.train.mode = "cached"     # "cached" (frozen layers once) | "plain" (recompute, as Keras)
    c.train.fold_map = "auto"   # "auto" | "vmap" | "map" | "loop"
    c.train.cache_dtype = "float32"   # or "bfloat16" to halve the cache
    c.train.checkpoint_secs = 60.0   # save at an epoch end once this long after the last save
    c.train.shard_folds = True  # split the fold axis over devices when there are several

    c.svm = ml_collections.ConfigDict(dict(kernel="rbf", C=1.0, class_weight="balanced"))

    if arg == "smoke":
        apply_smoke(c)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}: expected ':smoke' or nothing")
    return c


def apply_smoke(c):
    """Tiny settings: random weights, 32 px, 30 images, 2+1 epochs (a CPU in < 2 min)."""
    c.data.n_per_class = 10
    c.data.image_size = 32
    c.data.views = 2
    c.model.weights = "none"
    c.train.batch_size = 8
    c.train.epochs1 = 2
    c.train.epochs2 = 1
    c.head.hidden = 32


def cell(model: str, loss: str, arg=None):
    """The config of one study cell: the protocol with this backbone and loss
    (loss: categorical | binary | custom | severity, see ``handjax.run.LOSSES``)."""
    c = get_config(arg)
    c.name = "cell" + ("_smoke" if arg == "smoke" else "")
    return cell_config(c, model, loss)
