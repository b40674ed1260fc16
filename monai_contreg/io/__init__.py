"""File I/O: displacement fields (Learn2Reg layout), images with geometry, ITK transforms, atomic writes."""

from .atomic import atomic_path
from .fields import field_format, load_field, save_field
from .images import load_image, save_image
from .itk_transforms import ddf_to_itk_transform, load_itk_transform, save_itk_transform

__all__ = [
    "atomic_path",
    "ddf_to_itk_transform",
    "field_format",
    "load_field",
    "load_image",
    "load_itk_transform",
    "save_field",
    "save_image",
    "save_itk_transform",
]
