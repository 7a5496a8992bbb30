import numpy as np, spmdbatch as sb, traceback, sys
def run(name, f, *args, in_axes=0):
    try:
        r = sb.spmd(f, in_axes=in_axes)(*args)
        print(name, "OK", r)
    except Exception as e:
        print(name, "ERR", type(e).__name__, str(e)[:300])
    try:
        ex = [f(*[a[i] if s==0 else a for a,s in zip(args, in_axes if isinstance(in_axes, tuple) else (in_axes,)*len(args))]) for i in range(len(args[0]) if (in_axes==0 or in_axes[0]==0) else len(args[1]))]
        print("   loop:", ex)
    except Exception as e:
        print("   loop ERR", type(e).__name__, e)
xs = [np.array([1.,2.]), np.array([3.]), np.array([4.,5.,6.])]
run("gather oob", lambda h, i: h[i], np.ones((3,4)), np.array([1, 7, 2]))
run("enumerate", lambda x: sum(i*v for i,v in enumerate(x)) if False else _en(x), xs)
def _en(x):
    t = 0.0
    for i, v in enumerate(x):
        t = t + i * v
    return t
run("enumerate", _en, xs)
def _zip(x):
    t = 0.0
    for a, b in zip(x, x[1:]):
        t = t + a * b
    return t
run("zip", _zip, xs)
run("sum", lambda x: sum(x), xs)
run("min", lambda x: min(x), xs)
OPS = {0: np.tanh, 1: np.sin}
def _ops(x, m):
    return OPS[m](x)
run("OPS", _ops, np.array([1.,2.]), np.array([0,1]))
run("arange", lambda x: np.arange(len(x)) * 1.0 @ x if False else (np.arange(len(x)) * x).sum(), xs)
run("xs[:-1]", lambda x: x[:-1].sum(), xs)
run("xs[::-1]", lambda x: x[::-1][0], xs)
run("mask", lambda x: x[x > 1.5].sum(), xs)
bm = [np.array([True,False]), np.array([True]), np.array([False,True,True])]
run("raggedmask", lambda x, m: x[m].sum(), xs, bm)
W = np.ones((3,2))
xs2 = [np.ones((2,3)), np.ones((1,3)), np.ones((3,3))]
run("T@Td", lambda x, y: x @ y, xs, xs2)
run("d@dT", lambda x, y: y.T @ np.ones(3) , xs, xs2)
run("take", lambda x: np.take(x, np.array([0])).sum(), xs)
run("cumsum", lambda x: np.cumsum(x)[-1], xs)
run("flip", lambda x: np.flip(x)[0], xs)
run("stack", lambda x: np.stack([x, x]).sum(), xs)
run("split", lambda x: np.split(x, [1])[0].sum(), xs)
run("einsum", lambda x: np.einsum("i,i->", x, x), xs)
run("sort", lambda x: np.sort(x)[0], xs)
run("argsort", lambda x: np.argsort(x)[0], xs)
run("pad", lambda x: np.pad(x, (1, 1)).sum(), xs)
run("roll", lambda x: np.roll(x, 1)[0], xs)
