"""taxonomist: product listings (images, titles) → structured catalog data."""

from taxonomist._torchvision import install_hook as _install_torchvision_hook

_install_torchvision_hook()
