"""Reference for ctrcl-data's `rotate_nearest` (TransUNet's `random_rotate`): scipy 1.17.1
`ndimage.rotate(order=0, reshape=False)` of a 7×7 ramp 1..49, printed as Rust arrays.

    /tmp/fx/bin/pip install numpy scipy && /tmp/fx/bin/python scripts/reference/rotate_reference.py
"""
import numpy as np
import scipy.ndimage as nd

a = np.arange(1, 50, dtype=np.float64).reshape(7, 7)
for angle in [15, -20, 90]:
    out = nd.rotate(a, angle, order=0, reshape=False).astype(int).ravel().tolist()
    print(f"({angle}.0, {out}),")
