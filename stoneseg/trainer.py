"""The training wrapper: the random crop and the augmentation inside the replicated train step, the
network's own compute optionally XLA-compiled, and saving that writes the network alone.

`model.fit` runs `train_step` once per replica on the replica's device (`tf.distribute`), so the
crop and augmentation run where the model trains, not in the `tf.data` map. Keras' `RandomRotation`
has no XLA kernel, so with `jit_network` only the forward and backward pass of the network is
compiled (the optimizer update stays outside: it synchronizes replicas, which a nested XLA function
cannot).

With a `crop` (`train --crop N`), batches are `(images, masks, sizes)` of zero-padded whole records:
the crop cuts a random N×N window of each and marks the padding in it with weight 0; the weights
then ride through rotate/flip as a mask channel, and go to the loss and the metrics as
`sample_weight`, so padding never counts. Validation batches `(images, masks, weights)` are scored by
Keras' own test step with the same sample_weight.

"masks" hold the stone mask and, for a network with a second output (`output`, train --output), that
output's target as a second channel (stoneseg.data.make_dataset): the boundary band rides through the
augmentation nearest with the mask, the normalised distance (stored 0..255) bilinearly with the photo.
The loss has a term per output (Keras logs `mask_loss`, `<output>_loss` and their sum); IoU and Dice
score the stone probability alone, under the names `iou` and `dice` whatever the output.
"""

from pathlib import Path

import keras
import tensorflow as tf
from keras import ops

from stoneseg import distribute
from stoneseg.files import partial_path
from stoneseg.targets import DISTANCE_LEVELS


class SegmentationTrainer(keras.Model):
    """Trains `network` (whose second output, if any, is `output`) on batches cropped by `crop` (None:
    batches used whole) and augmented by `augmentation`, scored by compile's `metrics` (on the stone
    probability);
    `save()` saves `network` only, rebuilt for `saved_input_shape` when one is given (a network trained
    on crops of squashed records still takes the squashed size when saved)."""

    def __init__(self, network, augmentation, jit_network=False, crop=None, saved_input_shape=None, output="binary",
                 **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.augmentation = augmentation
        self.crop = crop
        self.saved_input_shape = saved_input_shape
        self.output_kind = output
        # Keras names each output's logged loss after these ("mask_loss", "boundary_loss"...).
        self.output_names = [tensor._keras_history.operation.name for tensor in network.outputs]
        self._gradients = tf.function(self._forward_backward, jit_compile=True) if jit_network else self._forward_backward

    def build(self, input_shape):
        self.augmentation.build(input_shape)

    def call(self, images, training=False):
        return self.network(images, training=training)

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=(), **kwargs):
        """Keras' compile, except that `metrics` score the stone probability alone, with the sample_weight
        that gives padding 0, and keep their own names (Keras would prefix them per output)."""
        self.stone_metrics = list(metrics)
        super().compile(optimizer, loss, loss_weights, **kwargs)

    def train_step(self, data):
        if self.crop is None:
            (images, masks), weights = data, None
        else:
            images, masks, weights = self.crop(*data)
        images, targets, weights = self._augment(images, masks, weights)
        loss, predictions, gradients = self._gradients(images, targets, weights)
        self.optimizer.apply(gradients, self.trainable_variables)
        # compute_loss divides by the replica count (the gradients are summed); log the true loss.
        self._loss_tracker.update_state(loss * tf.distribute.get_replica_context().num_replicas_in_sync)
        return self._reducible_logs(self.compute_metrics(images, targets, predictions, weights))

    def _augment(self, images, masks, weights):
        """Augment a batch and its targets alike: returns (images, targets, weights), the targets as the
        network's outputs are (`targets_of`), weights None when there are none."""
        masks = ops.cast(masks, "float32")
        nearest = [masks[..., :1]]  # the stone mask, the boundary band and the weights: nearest
        if self.output_kind == "boundary":
            nearest.append(masks[..., 1:2])
        if weights is not None:
            nearest.append(weights)
        nearest = ops.concatenate(nearest, axis=-1)
        if self.output_kind == "distance":  # bilinear, with the photo
            images, nearest, smooth = self.augmentation(images, nearest, masks[..., 1:2], training=True)
            targets = [nearest[..., :1], smooth / DISTANCE_LEVELS]
        else:
            images, nearest = self.augmentation(images, nearest, training=True)
            targets = nearest[..., :1] if self.output_kind == "binary" else [nearest[..., :1], nearest[..., 1:2]]
        return images, targets, None if weights is None else nearest[..., -1:]

    def targets_of(self, masks):
        """The targets of the network's outputs from a batch's mask channels (stoneseg.data.make_dataset):
        the stone mask, or [the stone mask, the second output's target in [0, 1]]."""
        masks = ops.cast(masks, "float32")
        if self.output_kind == "binary":
            return masks[..., :1]
        second = masks[..., 1:2] / DISTANCE_LEVELS if self.output_kind == "distance" else masks[..., 1:2]
        return [masks[..., :1], second]

    def _forward_backward(self, images, targets, weights):
        with tf.GradientTape() as tape:
            predictions = self(images, training=True)
            loss = self.compute_loss(x=images, y=targets, y_pred=predictions, sample_weight=weights, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)  # mixed precision: loss scaling
        return loss, predictions, tape.gradient(scaled_loss, self.trainable_variables)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Update the stone metrics on the stone probability (the first output) and return every metric."""
        masks = y[0] if isinstance(y, (list, tuple)) else y
        probabilities = y_pred[0] if isinstance(y_pred, (list, tuple)) else y_pred
        # Integer weights: IoU counts are integers, and Keras warns about float weights for them.
        weights = None if sample_weight is None else ops.cast(sample_weight, "int32")
        for metric in self.stone_metrics:
            metric.update_state(masks, probabilities, sample_weight=weights)
        return self.get_metrics_result()

    def test_step(self, data):
        images, masks, *weights = data
        return self._reducible_logs(super().test_step((images, self.targets_of(masks), *weights)))

    def save(self, filepath, overwrite=True, **kwargs):
        """Write the network alone to `filepath` (a `.keras` file), atomically."""
        filepath = Path(filepath)
        if filepath.exists() and not overwrite:
            raise FileExistsError(f"{filepath} exists; pass overwrite=True to replace it")
        network = self.network
        if self.saved_input_shape is not None:  # the same layers and weights on a fixed-size input
            network = keras.models.clone_model(
                network, input_tensors=keras.Input(self.saved_input_shape, name=network.inputs[0].name),
                clone_function=lambda layer: layer,
            )
        with partial_path(filepath) as partial:
            network.save(partial, overwrite=True, **kwargs)

    # Keras 3's fit() mishandles a multi-worker cluster in two places (keras-team/keras#20585).

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras learns the batch structure by all-reducing the first distributed batch, which fails
        # across workers for an (images, masks) pair; any one replica's share has the same structure.
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: self.distribute_strategy.experimental_local_results(value)[0], next(batches)
                )
                break
        if self.crop is not None and data_batch is not None and len(data_batch) == 3 and len(data_batch[2].shape) == 2:
            # Build on what the network trains on: crops, not padded records (int weights, as the metrics get).
            images, masks, weights = self.crop(*data_batch)
            data_batch = images, masks, ops.cast(weights, "int32")
        if data_batch is not None:
            data_batch = (data_batch[0], self.targets_of(data_batch[1]), *data_batch[2:])
        super()._maybe_symbolic_build(data_batch=data_batch)

    def _reducible_logs(self, logs):
        # Across workers Keras reduces each log value with a mean over axis 0, which a scalar lacks.
        if distribute.num_workers(self.distribute_strategy) > 1:
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs
