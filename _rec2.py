import numpy as np, spmdbatch as sb, time, sys
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
for d in (1000, 10000):
    t0=time.time()
    try:
        sb.spmd(lambda t: walk(t, len(t.val) - 1), max_depth=d)([good, bad, good])
    except Exception as e:
        print(type(e).__name__)
    print(d, time.time()-t0)
