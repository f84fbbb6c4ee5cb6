"""nnU-Net's default five folds, as nnU-Net v2 makes them when no splits_final.json exists:
`generate_crossval_split(sorted identifiers, seed=12345, n_splits=5)` — sklearn's KFold with
shuffle, on numpy's legacy RandomState(12345). Written to
crates/ctrcl-data/tests/data/nnunet_folds/expected.json for several case counts; ctrcl's
`nnunet::generate_folds` must give the same train/val lists (tests in nnunet.rs).

    python3 -m venv /tmp/f && /tmp/f/bin/pip install numpy scikit-learn
    /tmp/f/bin/python scripts/reference/nnunet_folds.py
"""
import json
import os

import numpy as np
from sklearn.model_selection import KFold


def generate_crossval_split(train_identifiers, seed=12345, n_splits=5):
    # nnunetv2/utilities/crossval_split.py (nnU-Net v2.5), verbatim apart from the comment.
    splits = []
    kfold = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for i, (train_idx, test_idx) in enumerate(kfold.split(train_identifiers)):
        train_keys = np.array(train_identifiers)[train_idx]
        test_keys = np.array(train_identifiers)[test_idx]
        splits.append({})
        splits[-1]['train'] = list(train_keys)
        splits[-1]['val'] = list(test_keys)
    return splits


out = {}
for n in [5, 6, 7, 10, 13, 20, 33, 50, 101, 300]:
    ids = list(np.sort([f"case_{i:03d}" for i in range(n)]))
    folds = generate_crossval_split(ids)
    out[str(n)] = [{"train": [str(k) for k in f["train"]], "val": [str(k) for k in f["val"]]} for f in folds]
path = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-data/tests/data/nnunet_folds/expected.json")
with open(path, "w") as f:
    json.dump(out, f, indent=0)
print("wrote", os.path.normpath(path), "for", list(out))
