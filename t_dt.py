import sys; sys.path.insert(0, "tests/spmd")
import numpy as np, spmdbatch as sb
from program_gen import loop_dtype, dtype_matches
def f1(x, c):
    if c > 0:
        y = x                  # float32
    else:
        y = np.float64(0.5)    # float64
    z = y * x
    if c > 0:
        out = z
    else:
        out = x
    return out
def f2(x, c):
    if c > 0:
        y = x                  # float32
    else:
        y = 0.5                # Python float
    return np.sin(y)           # loop: float32 / float64 -> stacked float64
def f3(x, c):
    y = 0.5 if c > 0 else x
    z = np.sin(y)
    return z if c < 0 else x   # loop: all float32
def f4(x, c):
    y = min(x, 2.0) if c > 0 else x
    return y * np.float32(2)
def f5(x, c):
    y = 0.5 if c > 0 else x
    z = np.sin(y)
    return z * x
xs = [np.float32(v) for v in (0.25, 0.5, 1.5)]; cs = np.array([1, -1, 1])
for f in (f1, f2, f3, f4, f5):
    loop = [f(x, c) for x, c in zip(xs, cs)]
    got = sb.spmd(f)(xs, cs)
    print(f.__name__, got.dtype, loop_dtype(loop), [type(r).__name__ + str(getattr(r,'dtype','')) for r in loop], dtype_matches(got.dtype, loop))
