"""Pure cryptographic primitives: bytes in, bytes out.

Only this package may import ``cryptography``, ``gmpy2`` or ``gmssl`` (an
import-linter contract enforces it).  Every function names the spec clause it
implements in its docstring.
"""
