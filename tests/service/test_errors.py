import leafid.errors as errors
from leafid.errors import BadImageError, ImageError, LeafidError


def _subclasses(cls: type[LeafidError]) -> list[type[LeafidError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _subclasses(sub)]


def test_every_error_type_has_its_own_code() -> None:
    own = [c for c in _subclasses(LeafidError) if c.__module__ == errors.__name__]
    codes = [c.code for c in own]
    assert len(own) > 5 and len(set(codes)) == len(codes), codes


def test_bad_image_is_the_only_bad_image() -> None:
    assert BadImageError.code == "bad_image" and ImageError.code != "bad_image"
    assert BadImageError.http_status == ImageError.http_status == 400
