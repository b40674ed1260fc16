"""Image features for registration (MIND-SSC)."""

from .mind import MINDSSC, mind_ssc, mind_ssc_pairs

__all__ = ["MINDSSC", "mind_ssc", "mind_ssc_pairs"]
