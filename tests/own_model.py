"""A user's own fine-tuned model as the tests make it: scikit-learn's digits written as an ImageFolder with
named classes, a ResNet-18 trained on it at a size and normalisation of its own, saved as timm's train.py
saves a checkpoint, with timm's own config writer beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six")
IMAGE_SIZE = 40
MEAN, STD = (0.1, 0.1, 0.1), (0.3, 0.3, 0.3)


def write_digits_folder(root: Path, classes=CLASS_NAMES) -> Path:
    """``root/<name>/<n>.png`` for the first ``len(classes)`` digits of scikit-learn's set."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, image in enumerate(digits.images[digits.target == label]):
            pixels = (image * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{n}.png")
    return root


def train_own_checkpoint(folder: Path, out: Path, *, epochs: int = 1) -> Path:
    """A ResNet-18 trained on ``folder`` at IMAGE_SIZE with MEAN/STD; ``out/model_best.pth.tar`` (timm
    train.py's layout: state_dict + argparse args) and ``out/config.json`` (timm's ``save_config_for_hf``)."""
    import timm
    from timm.models._hub import save_config_for_hf

    from rmtdeploy.data import open_data
    from rmtdeploy.preprocessing import InputConfig

    data = open_data(folder)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=data.num_classes)
    InputConfig(input_size=(3, IMAGE_SIZE, IMAGE_SIZE), mean=MEAN, std=STD).apply(model)
    loader = torch.utils.data.DataLoader(
        data.dataset("train", model, train=False), batch_size=64, shuffle=True
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model_best.pth.tar"
    args = argparse.Namespace(
        model="resnet18", num_classes=data.num_classes, input_size=[3, IMAGE_SIZE, IMAGE_SIZE]
    )
    torch.save(
        {"epoch": epochs, "arch": "resnet18", "state_dict": model.state_dict(), "args": args}, checkpoint
    )
    save_config_for_hf(model.eval(), str(out / "config.json"))
    return checkpoint
