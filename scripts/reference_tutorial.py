"""The baseline a user would write from the tutorial: its loop, one scheduler after another,
logging every lr and loss with ``mlflow.log_metric`` (one database round trip per value).

Run by scripts/benchmark.py against a fresh SQLite store: ``python reference_tutorial.py URI``.
"""

import sys

import mlflow
import sklearn.datasets
import torch

from pipeline.problems.model import LogicNet

NAMES = [
    "manual",
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "ReduceLROnPlateau",
    "LambdaLR",
]


def make_scheduler(name, optimizer):
    schedulers = torch.optim.lr_scheduler
    if name == "manual":
        return None
    if name == "StepLR":
        return schedulers.StepLR(optimizer, step_size=50, gamma=0.99)
    if name == "MultiStepLR":
        return schedulers.MultiStepLR(optimizer, [250, 500, 750], 0.5)
    if name == "ExponentialLR":
        return schedulers.ExponentialLR(optimizer, gamma=0.997)
    if name == "CosineAnnealingLR":
        return schedulers.CosineAnnealingLR(optimizer, T_max=1000)
    if name == "ReduceLROnPlateau":
        return schedulers.ReduceLROnPlateau(optimizer, patience=50)
    lambdas = [lambda s: 0.95 ** (s // 50), lambda s: 1 / (1 + 0.005 * s)]
    return schedulers.LambdaLR(optimizer, lambdas)


def main(uri: str) -> None:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("reference")
    X, Y = sklearn.datasets.make_moons(20, noise=0.2, random_state=42)
    xt = torch.from_numpy(X).type(torch.FloatTensor)
    yt = torch.from_numpy(Y).type(torch.LongTensor)
    for name in NAMES:
        torch.manual_seed(42)
        model = LogicNet(inputdim=2, hiddendim=3, outputdim=2)
        groups = [
            {"params": model.Liner1.parameters()},
            {"params": model.Liner2.parameters()},
        ]
        optimizer = torch.optim.Adam(groups, lr=0.01)
        scheduler = make_scheduler(name, optimizer)
        with mlflow.start_run(run_name=name):
            mlflow.log_param("scheduler", name)
            for i in range(1000):
                loss = model.getloss(xt, yt)
                mlflow.log_metric("loss", loss.item(), step=i)
                mlflow.log_metric("lr", optimizer.param_groups[0]["lr"], step=i)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if scheduler is None:
                    if i % 50 == 0:
                        for p in optimizer.param_groups:
                            p["lr"] *= 0.99
                elif name == "ReduceLROnPlateau":
                    scheduler.step(loss.item())
                else:
                    scheduler.step()


if __name__ == "__main__":
    main(sys.argv[1])
