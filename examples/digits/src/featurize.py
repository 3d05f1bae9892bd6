"""Scale the pixels and optionally project them on principal components.

Both transforms are fitted on the training split only. Writes
data/features/{train,test}.npy with the label in column 0.
"""

import os

import numpy as np
import yaml
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

params = yaml.safe_load(open("params.yaml"))["featurize"]
train = np.loadtxt("data/prepared/train.csv", delimiter=",", skiprows=1)
test = np.loadtxt("data/prepared/test.csv", delimiter=",", skiprows=1)
x_train, x_test = train[:, 1:], test[:, 1:]

if params["scale"]:
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
if params["pca"]:
    pca = PCA(n_components=params["pca"], svd_solver="full").fit(x_train)
    x_train, x_test = pca.transform(x_train), pca.transform(x_test)
    kept = pca.explained_variance_ratio_.sum()
    print(f"{params['pca']} components keep {kept:.1%} of the variance")

os.makedirs("data/features", exist_ok=True)
np.save("data/features/train.npy", np.column_stack([train[:, 0], x_train]))
np.save("data/features/test.npy", np.column_stack([test[:, 0], x_test]))
print(f"{x_train.shape[1]} features per image")
