"""Split scikit-learn's bundled digits into data/prepared/{train,test}.csv.

Each row is the label followed by the 64 pixel values (0-16) of one 8x8 image.
"""

import os

import numpy as np
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

params = yaml.safe_load(open("params.yaml"))["prepare"]
digits = load_digits()
rows = np.column_stack([digits.target, digits.data]).astype(int)
train, test = train_test_split(
    rows,
    test_size=params["test_size"],
    random_state=params["seed"],
    stratify=digits.target,
)

os.makedirs("data/prepared", exist_ok=True)
header = "label," + ",".join(f"pixel{i}" for i in range(64))
for name, split in (("train", train), ("test", test)):
    path = f"data/prepared/{name}.csv"
    np.savetxt(path, split, fmt="%d", delimiter=",", header=header, comments="")
    print(f"{path}: {len(split)} images")
