"""Tiny hand-made networks whose output is known, shared by the inference, predict and evaluate tests.

"brightness" maps each pixel's grey level to a probability (bright = stone); with `blur` it does so after
a 9x9 Gaussian blur. With `scale` it carries stoneseg.model's PhotoScale layer, as a model trained on
records at that scale does, so predict and evaluate read the scale from it.
"""

import cv2
import keras
import numpy as np
from keras import layers

from stoneseg.model import PHOTO_SCALE_LAYER, PhotoScale


def brightness_model(size, blur=0, scale=None):
    """Probability sigmoid((grey - 128) / 8) per pixel, grey = the mean of R, G, B, optionally after a
    Gaussian blur of `blur` pixels' sigma (a 9x9 kernel). `size` None: any input size."""
    images = keras.Input((size, size, 3))
    pixels = images if scale is None else PhotoScale(scale, name=PHOTO_SCALE_LAYER)(images)
    grey = layers.Conv2D(1, 1, use_bias=False, name="grey")(pixels)
    weights = [np.full((1, 1, 3, 1), 1 / 3, np.float32)]
    if blur:
        grey = layers.Conv2D(1, 9, padding="same", use_bias=False, name="blur")(grey)
        kernel = cv2.getGaussianKernel(9, blur)
        weights.append((kernel @ kernel.T).astype(np.float32)[:, :, None, None])
    scores = layers.Rescaling(1 / 8, offset=-16)(grey)
    model = keras.Model(images, layers.Activation("sigmoid", dtype="float32")(scores))
    model.set_weights(weights)
    return model


def brightness(image):
    """What brightness_model (no blur) computes, in NumPy: (H, W) float probabilities of (H, W, 3) pixels."""
    return 1 / (1 + np.exp(-(image.astype(np.float64).mean(axis=2) / 8 - 16)))


def distance_model(size=None, blur=6.0, scale=None):
    """A tiny network with stoneseg's two outputs of a distance model: "mask", brightness_model's probability,
    and "distance", the grey level after a 25x25 Gaussian blur of `blur` pixels' sigma, mapped to 0..1 by
    sigmoid((blurred - 215) / 2): on bright (220) discs of radius 18 or more on a dark (30) ground it is near 1
    at each disc's centre and near 0 where two such discs touch (blurred to about 209), as a trained distance
    head is; small discs get no seed at all and stay whole."""
    images = keras.Input((size, size, 3))
    pixels = images if scale is None else PhotoScale(scale, name=PHOTO_SCALE_LAYER)(images)
    grey = layers.Conv2D(1, 1, use_bias=False, name="grey")(pixels)
    blurred = layers.Conv2D(1, 25, padding="same", use_bias=False, name="blur")(grey)
    mask = layers.Activation("sigmoid", dtype="float32", name="mask")(layers.Rescaling(1 / 8, offset=-16)(grey))
    distance = layers.Activation("sigmoid", dtype="float32", name="distance")(layers.Rescaling(1 / 2, offset=-107.5)(blurred))
    model = keras.Model(images, [mask, distance])
    kernel = cv2.getGaussianKernel(25, blur)
    model.set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32), (kernel @ kernel.T).astype(np.float32)[:, :, None, None]])
    return model
