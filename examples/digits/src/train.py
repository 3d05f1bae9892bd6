"""Fit the classifier that params.yaml names and pickle it to model/model.pkl."""

import os
import pickle

import numpy as np
import yaml
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

params = yaml.safe_load(open("params.yaml"))["train"]
if params["model"] == "logreg":
    model = LogisticRegression(C=params["C"], max_iter=2000)
elif params["model"] == "svm":
    model = SVC(C=params["C"], random_state=params["seed"])
elif params["model"] == "forest":
    model = RandomForestClassifier(
        n_estimators=params["n_estimators"],
        max_depth=params["max_depth"] or None,
        random_state=params["seed"],
    )
else:
    raise SystemExit(
        f"params.yaml: train.model is {params['model']!r}; use logreg, svm or forest"
    )

train = np.load("data/features/train.npy")
model.fit(train[:, 1:], train[:, 0].astype(int))

os.makedirs("model", exist_ok=True)
with open("model/model.pkl", "wb") as f:
    pickle.dump(model, f)
print(f"trained {model!r} on {len(train)} images")
