"""A three-stage pipeline (prepare, train, evaluate) that logs each run to runs.log."""

THREE_STAGES = """\
stages:
  prepare:
    cmd: python3 prepare.py
    deps: [prepare.py]
    params: [prepare.n]
    outs: [data]
  train:
    cmd: python3 train.py
    deps: [train.py, data]
    params: [train.lr]
    outs: [model.txt, bin/tool]
  evaluate:
    cmd: python3 evaluate.py
    deps: [evaluate.py, model.txt]
    metrics: [{metrics.json: {cache: false}}]
"""

SCRIPTS = {
    "prepare.py": """
        import os, yaml
        n = yaml.safe_load(open("params.yaml"))["prepare"]["n"]
        os.makedirs("data", exist_ok=True)
        for i in range(n):
            open(f"data/part{i}.txt", "w").write(str(i) * 50)
        open("runs.log", "a").write("prepare\\n")
    """,
    "train.py": """
        import os, yaml
        lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
        parts = sorted(os.listdir("data"))
        open("model.txt", "w").write(f"{lr} {len(parts)}\\n")
        os.makedirs("bin", exist_ok=True)
        open("bin/tool", "w").write("#!/bin/sh\\necho tool\\n")
        os.chmod("bin/tool", 0o755)
        open("runs.log", "a").write("train\\n")
    """,
    "evaluate.py": """
        import json
        lr, n = open("model.txt").read().split()
        json.dump({"score": float(lr) * int(n)}, open("metrics.json", "w"))
        open("runs.log", "a").write("evaluate\\n")
    """,
}
