"""`python -m transgan_lib.gan.train`, the former spelling of `python -m transgan_lib.methods.transgan.train`."""
from ..methods.transgan.train import main, train_gan  # noqa: F401 (the former import path)

if __name__ == "__main__":
    main()
