import numpy as np, spmdbatch as sb, time
from typing import NamedTuple
class T(NamedTuple):
    left: np.ndarray
    right: np.ndarray
    val: np.ndarray
def walk(t, k):
    if t.left[k] < 0:
        return t.val[k]
    return walk(t, t.left[k]) + walk(t, t.right[k])
good = T(np.array([-1,-1,0]), np.array([-1,-1,1]), np.array([1.,2.,0.]))
bad = T(np.array([-1,-1,2]), np.array([-1,-1,1]), np.array([1.,2.,0.]))   # left[2] = 2
t0=time.time()
try:
    print(sb.spmd(lambda t: walk(t, len(t.val) - 1))([good, bad, good]))
except Exception as e:
    print(type(e).__name__, str(e)[:400])
print(time.time()-t0)
try:
    print(sb.spmd(lambda t: walk(t, len(t.val) - 1), max_depth=50)([good, bad, good]))
except Exception as e:
    print(type(e).__name__, str(e)[:400])
def f(t, k):
    if t.left[k] < 0:
        return t.val[k]
    return g(t, t.left[k])
def g(t, k):
    return f(t, k) * 1.0
try:
    print(sb.spmd(lambda t: f(t, len(t.val) - 1))([good, bad, good]))
except Exception as e:
    print(type(e).__name__, str(e)[:400])
