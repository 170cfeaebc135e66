"""handjax.data.synthetic: rendered hands look like photos (content, all distinct)."""
from handjax import data


def test_synthetic_images_look_like_photos_not_blank():
    ex = data.load_synthetic(n_per_class=5, image_size=64)
    per_image_std = ex.images.reshape(len(ex.ids), -1).std(1)
    assert per_image_std.min() > 10  # content and clutter, not a flat fill
    assert len({im.tobytes() for im in ex.images}) == 15


def test_two_photos_per_person_share_traits_and_metadata():
    """Photos 2j and 2j+1 of a class are one person's left and right hand: one subject,
    one skin tone and severity band, different hands."""
    ids = [f"synthetic/ra/{i:04d}" for i in range(6)]
    subjects, cols = data.synthetic_metadata(ids, seed=0)
    assert subjects[0] == subjects[1] != subjects[2] == subjects[3]
    assert cols["hand"].tolist() == ["left", "right"] * 3
    for j in (0, 2, 4):
        assert cols["skin_tone"][j] == cols["skin_tone"][j + 1]
        assert cols["severity_band"][j] == cols["severity_band"][j + 1] != "none"
    normal, cols = data.synthetic_metadata(["synthetic/normal/0000"], seed=0)
    assert cols["severity_band"].tolist() == ["none"]
