"""Former home of the training code, kept so `python -m transgan_lib.gan.train` still runs: the shared
loop is `training/`, the TransGAN's and the restorer's parts are `methods/transgan/` and `methods/restorer/`."""
