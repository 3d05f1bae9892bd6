"""Score the model on the test split.

Writes metrics/scores.json (accuracy and macro-averaged F1) and
metrics/confusion.csv, one `actual,predicted` row per test image, which is
the input of DVC's `confusion` plot template.
"""

import json
import os
import pickle

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

test = np.load("data/features/test.npy")
with open("model/model.pkl", "rb") as f:
    model = pickle.load(f)
actual = test[:, 0].astype(int)
predicted = model.predict(test[:, 1:])

scores = {
    "accuracy": round(float(accuracy_score(actual, predicted)), 4),
    "f1": round(float(f1_score(actual, predicted, average="macro")), 4),
}
os.makedirs("metrics", exist_ok=True)
with open("metrics/scores.json", "w") as f:
    json.dump(scores, f, indent=2)
    f.write("\n")
with open("metrics/confusion.csv", "w") as f:
    f.write("actual,predicted\n")
    f.writelines(f"{a},{p}\n" for a, p in zip(actual, predicted, strict=True))
print(json.dumps(scores))
