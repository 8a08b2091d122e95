"""Which files count as images, and finding them under the paths a user gives (``vpt predict``)."""
from __future__ import annotations

import os
from typing import List, Sequence

from ..errors import DataError

# the one list of image file extensions (classification folders, detection folders, predict inputs)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_image(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return os.path.splitext(name)[1].lower() in extensions and not os.path.basename(name).startswith(".")


def collect_images(inputs: Sequence[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Files as given; folders searched recursively for image files (sorted, hidden files skipped)."""
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, dirnames, files in os.walk(item):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                paths += [os.path.join(dirpath, f) for f in sorted(files) if is_image(f, extensions)]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise DataError(f"no such file or folder: {item!r}; pass image files and/or folders of images")
    if not paths:
        raise DataError(f"no images found in {list(inputs)}; expected files ending in {', '.join(extensions)}")
    return paths
