"""Build the native SM2 point arithmetic as the CFFI extension ``pipeline.crypto._sm2_native``.

The C source is ``pipeline/crypto/native/sm2_curve.c``.  Run by ``tests/setup.sh``
(``python -m pipeline.crypto._sm2_native_build``): it compiles in a temporary
directory and puts ``_sm2_native*.so`` into ``pipeline/crypto/`` (not
committed).  Without it :mod:`pipeline.crypto._sm2_curve` computes in Python.

Example:
    >>> build()  # doctest: +SKIP
    PosixPath('.../pipeline/crypto/_sm2_native.cpython-311-x86_64-linux-gnu.so')
    >>> "int sm2n_abi_version(void);" in CDEF
    True
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cffi import FFI  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "native" / "sm2_curve.c"

#: What ``sm2n_abi_version()`` of the C source returns; the loader checks it.
ABI_VERSION = 4

CDEF = """
int sm2n_abi_version(void);
typedef struct sm2n_table sm2n_table;
sm2n_table *sm2n_table_new(const unsigned char xy[64], int width);
void sm2n_table_free(sm2n_table *t);
int sm2n_mul_base_ct(const sm2n_table *t, const unsigned char k[32], const unsigned char blind[32],
                     unsigned char out[96]);
int sm2n_mul2_vt(const sm2n_table *g, const unsigned char s[32], const sm2n_table *q,
                 const unsigned char t[32], unsigned char out[96]);
int sm2n_mul2_vt_x_equals(const sm2n_table *g, const unsigned char s[32], const sm2n_table *q,
                          const unsigned char t[32], const unsigned char v[32]);
int sm2n_point_valid(const unsigned char xy[64]);
int sm2n_field_op(int op, const unsigned char a[32], const unsigned char b[32],
                  unsigned char out[32]);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pipeline.crypto._sm2_native",
    SOURCE.read_text(encoding="ascii"),
    extra_compile_args=["-O3", "-funroll-loops", "-std=c11", "-Wall", "-Wextra"],
)


def build() -> Path:
    """Compile the extension and install it beside this file; return its path."""
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=False))
        target = HERE / built.name
        shutil.copyfile(built, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
    return target


if __name__ == "__main__":
    print(build())
