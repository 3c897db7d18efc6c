"""Offline stand-in for Quantus' ``tests/conftest.py`` (check-time use only).

Copy this file over ``tests/conftest.py`` of a Quantus checkout to run the
torch-only tests without network access and without TensorFlow/Keras or
Hugging Face ``transformers``; restore the original afterwards
(``git checkout tests/conftest.py``). It must never be part of a patch.

Fixture names are identical to the real conftest, so existing test ids keep
working. Differences to the real conftest:

- ``reset_prngs`` seeds ``random``, ``numpy`` and ``torch`` with 42 directly
  instead of calling ``transformers.set_seed(42)`` (which does the same for
  these three libraries).
- ``load_cifar10_images`` is a small deterministic synthetic batch with the
  same shape and value range as the real one (8 x 3 x 32 x 32, values in
  [0, 255], labels in 0..9); the real fixture downloads CIFAR-10 via Keras.
- ``titanic_dataset`` is a deterministic synthetic (40, 12) feature matrix with
  binary labels; the real fixture reads ``tutorials/assets/titanic3.csv``
  (not in the snapshot) and needs scikit-learn's ``train_test_split``.
- TensorFlow fixtures (``load_mnist_model_tf``, ``load_cifar10_model_tf``,
  ``load_1d_3ch_conv_model_tf``, ``titanic_model_tf``) and the Hugging Face
  fixtures (``load_hf_distilbert_sequence_classifier``,
  ``dummy_hf_tokenizer``) call ``pytest.skip``: tests that request them are
  reported as skipped, not as errors.
- Model/data fixtures are not ``autouse`` (the real ones are, which would load
  every TF/HF model for every test); tests still receive them by name through
  ``lazy_fixture``/arguments. ``reset_prngs`` and ``set_env`` stay ``autouse``.
- MNIST model and images, the 1D conv models, the ``almost_uniform_*`` /
  ``flat_*`` fixtures and the softmax models are built exactly as in the real
  conftest (from ``tests/assets`` where the real one does).
"""

import os
import random

import numpy as np
import pytest
import torch

from quantus.helpers.model.models import ConvNet1D, LeNet, TitanicSimpleTorchModel

CIFAR_IMAGE_SIZE = 32
MNIST_IMAGE_SIZE = 28
BATCH_SIZE = 124
MINI_BATCH_SIZE = 8
RANDOM_SEED = 42


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _skip_tf():
    pytest.skip("TensorFlow model fixture: TensorFlow is not available offline.")


@pytest.fixture(scope="function", autouse=True)
def reset_prngs():
    _seed_all(RANDOM_SEED)


@pytest.fixture(scope="session")
def load_mnist_model():
    """Load a pre-trained LeNet classification model (architecture at quantus/helpers/models)."""
    model = LeNet()
    model.load_state_dict(torch.load("tests/assets/mnist", map_location="cpu", weights_only=True))
    return model


@pytest.fixture(scope="session")
def load_mnist_model_tf():
    _skip_tf()


@pytest.fixture(scope="session")
def load_cifar10_model_tf():
    _skip_tf()


@pytest.fixture(scope="session")
def load_1d_1ch_conv_model():
    model = ConvNet1D(n_channels=1, n_classes=10)
    model.eval()
    return model


@pytest.fixture(scope="session")
def load_1d_3ch_conv_model():
    model = ConvNet1D(n_channels=3, n_classes=10)
    model.eval()
    return model


@pytest.fixture(scope="session")
def load_1d_3ch_conv_model_tf():
    _skip_tf()


@pytest.fixture(scope="session")
def load_mnist_images():
    """Load a batch of MNIST digits: inputs and outputs to use for testing."""
    x_batch = (
        np.loadtxt("tests/assets/mnist_x")
        .astype(float)
        .reshape((BATCH_SIZE, 1, MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE))
    )[:MINI_BATCH_SIZE]
    y_batch = np.loadtxt("tests/assets/mnist_y").astype(int)[:MINI_BATCH_SIZE]
    return {"x_batch": x_batch, "y_batch": y_batch}


@pytest.fixture(scope="session")
def load_cifar10_images():
    """Synthetic stand-in for the CIFAR-10 batch (same shape, dtype and value range)."""
    rng = np.random.default_rng(RANDOM_SEED)
    x_batch = rng.integers(0, 256, size=(MINI_BATCH_SIZE, 3, CIFAR_IMAGE_SIZE, CIFAR_IMAGE_SIZE)).astype(float)
    y_batch = (np.arange(MINI_BATCH_SIZE) % 10).astype(int)
    return {"x_batch": x_batch, "y_batch": y_batch}


@pytest.fixture(scope="session")
def load_mnist_images_tf(load_mnist_images):
    return {
        "x_batch": np.moveaxis(load_mnist_images["x_batch"], 1, -1),
        "y_batch": load_mnist_images["y_batch"],
    }


@pytest.fixture(scope="session")
def almost_uniform_1d():
    return {
        "x_batch": np.random.randn(10, 3, 100),
        "y_batch": np.random.randint(0, 10, size=10),
        "a_batch": np.random.uniform(0, 0.01, size=(10, 1, 100)),
    }


@pytest.fixture(scope="session")
def almost_uniform_1d_no_abatch_channel_last():
    return {
        "x_batch": np.random.randn(10, 100, 3),
        "y_batch": np.random.randint(0, 10, size=10),
    }


@pytest.fixture(scope="session")
def almost_uniform_1d_no_abatch():
    return {
        "x_batch": np.random.randn(10, 3, 100),
        "y_batch": np.random.randint(0, 10, size=10),
        "a_batch": None,
    }


@pytest.fixture(scope="session")
def almost_uniform_2d():
    return {
        "x_batch": np.random.randn(10, 3, 224, 224),
        "y_batch": np.random.randint(0, 10, size=10),
        "a_batch": np.random.uniform(0, 0.01, size=(10, 1, 224, 224)),
    }


@pytest.fixture(scope="session")
def almost_uniform_2d_no_abatch():
    return {
        "x_batch": np.random.randn(10, 1, 28, 28),
        "y_batch": np.random.randint(0, 10, size=10),
        "a_batch": None,
    }


@pytest.fixture(scope="session")
def flat_image_array():
    return {
        "x": np.zeros((1, 3 * 28 * 28)),
        "shape": (3, 28, 28),
        "channel_first": True,
    }


@pytest.fixture(scope="session")
def flat_sequence_array():
    return {
        "x": np.zeros((1, 3 * 28)),
        "shape": (3, 28),
        "channel_first": True,
    }


@pytest.fixture(scope="session")
def titanic_model_torch():
    model = TitanicSimpleTorchModel()
    model.load_state_dict(torch.load("tests/assets/titanic_model_torch.pickle", weights_only=True))
    return model


@pytest.fixture(scope="session")
def titanic_model_tf():
    _skip_tf()


@pytest.fixture(scope="session")
def titanic_dataset():
    """Synthetic stand-in for the Titanic test split (12 features, binary labels)."""
    rng = np.random.default_rng(RANDOM_SEED)
    x_batch = rng.normal(size=(40, 12)).astype(float)
    y_batch = rng.integers(0, 2, size=40).astype(int)
    return {"x_batch": x_batch, "y_batch": y_batch}


@pytest.fixture(scope="session")
def load_mnist_model_softmax_not_last():
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Softmax(),
        torch.nn.Linear(28 * 28, 10),
    )


@pytest.fixture(scope="session")
def load_mnist_model_softmax():
    return torch.nn.Sequential(
        LeNet(),
        torch.nn.Softmax(),
    )


@pytest.fixture(scope="session")
def load_hf_distilbert_sequence_classifier():
    pytest.skip("Hugging Face model fixture: needs the network.")


@pytest.fixture(scope="session")
def dummy_hf_tokenizer():
    pytest.skip("Hugging Face tokenizer fixture: needs the network.")


@pytest.fixture(scope="session", autouse=True)
def set_env():
    """Set ENV var, so test outputs are not polluted by progress bars and warnings."""
    os.environ["PYTEST"] = "1"
