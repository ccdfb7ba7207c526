"""A test helper: tiny hand-made networks whose output is known, for the tests of prediction and scoring."""

import cv2
import keras
import numpy as np
from keras import layers


def brightness_model(size, blur=0):
    """Probability sigmoid((grey - 128) / 8) per pixel, grey = the mean of R, G, B, optionally after a
    Gaussian blur of `blur` pixels' sigma (a 9x9 kernel). `size` None: any input size."""
    images = keras.Input((size, size, 3))
    grey = layers.Conv2D(1, 1, use_bias=False, name="grey")(images)
    weights = [np.full((1, 1, 3, 1), 1 / 3, np.float32)]
    if blur:
        grey = layers.Conv2D(1, 9, padding="same", use_bias=False, name="blur")(grey)
        kernel = cv2.getGaussianKernel(9, blur)
        weights.append((kernel @ kernel.T).astype(np.float32)[:, :, None, None])
    scores = layers.Rescaling(1 / 8, offset=-16)(grey)
    model = keras.Model(images, layers.Activation("sigmoid", dtype="float32")(scores))
    model.set_weights(weights)
    return model
