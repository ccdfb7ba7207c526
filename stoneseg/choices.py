"""What the command lines check their arguments against before TensorFlow loads (so `--help` and a bad
flag answer at once): the encoders, losses and distribution strategies on offer, and the network's
output stride. The modules that implement them take them from here.
"""

BLOCKS_PER_STAGE = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}  # encoder -> residual blocks per stage
OUTPUT_STRIDE = 32  # the stem conv, the stem pool and stages 2-4 each halve the image
LOSSES = ("bce", "bce_dice")
# What the network predicts besides the stone probability (train --output): nothing; a boundary band
# (background / stone interior / stone boundary, as two sigmoid maps); each stone's normalised distance to its edge.
OUTPUTS = ("binary", "boundary", "distance")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")  # --precision; resolved by stoneseg.precision
