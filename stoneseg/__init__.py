"""stoneseg: segment stones from the background in large photos with a resnet18-UNet."""

__version__ = "0.1.0"
