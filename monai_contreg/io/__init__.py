"""File I/O: displacement fields (Learn2Reg layout) and atomic writes."""

from .atomic import atomic_path
from .fields import field_format, load_field, save_field

__all__ = ["atomic_path", "field_format", "load_field", "save_field"]
