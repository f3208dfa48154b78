"""Product profiles: per-product card content declared as data (``config/products``).

Example:
    >>> from pipeline.profiles import load_product
    >>> load_product("demo-visa-rsa").icc_key.bits         # doctest: +SKIP
    1152
"""

from pipeline.profiles.loader import load_product, parse_product, product_path
from pipeline.profiles.model import ProductProfile

__all__ = ["ProductProfile", "load_product", "parse_product", "product_path"]
