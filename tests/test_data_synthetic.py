"""handjax.data.synthetic: rendered hands look like photos (content, all distinct)."""
from handjax import data


def test_synthetic_images_look_like_photos_not_blank():
    ex = data.load_synthetic(n_per_class=5, image_size=64)
    per_image_std = ex.images.reshape(len(ex.ids), -1).std(1)
    assert per_image_std.min() > 10  # content and clutter, not a flat fill
    assert len({im.tobytes() for im in ex.images}) == 15
