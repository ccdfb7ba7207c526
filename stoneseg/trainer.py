"""The training wrapper: the random crop and the augmentation inside the replicated train step, the
network's own compute optionally XLA-compiled, and saving that writes the network alone.

`model.fit` runs `train_step` once per replica on the replica's device (`tf.distribute`), so the
crop and augmentation run where the model trains, not in the `tf.data` map. Keras' `RandomRotation`
has no XLA kernel, so with `jit_network` only the forward and backward pass of the network is
compiled (the optimizer update stays outside: it synchronizes replicas, which a nested XLA function
cannot).

With a `crop` (`train --crop N`), batches are `(images, masks, sizes)` of zero-padded whole records:
the crop cuts a random N×N window of each and marks the padding in it with weight 0; the weights
then ride through rotate/flip as a second mask channel, and go to the loss and the metrics as
`sample_weight`, so padding never counts. Validation batches `(images, masks, weights)` are scored by
Keras' own test step with the same sample_weight.
"""

from pathlib import Path

import keras
import tensorflow as tf
from keras import ops

from stoneseg import distribute
from stoneseg.files import partial_path


class SegmentationTrainer(keras.Model):
    """Trains `network` on batches cropped by `crop` (None: batches used whole) and augmented by
    `augmentation`; `save()` saves `network` only, rebuilt for `saved_input_shape` when one is given
    (a network trained on crops of squashed records still takes the squashed size when saved)."""

    def __init__(self, network, augmentation, jit_network=False, crop=None, saved_input_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.augmentation = augmentation
        self.crop = crop
        self.saved_input_shape = saved_input_shape
        self._gradients = tf.function(self._forward_backward, jit_compile=True) if jit_network else self._forward_backward

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, **kwargs):
        """Keras' compile, with `metrics` as weighted metrics: they see the sample_weight that gives padding 0."""
        super().compile(optimizer, loss, loss_weights, weighted_metrics=metrics, **kwargs)

    def build(self, input_shape):
        self.augmentation.build(input_shape)

    def call(self, images, training=False):
        return self.network(images, training=training)

    def train_step(self, data):
        if self.crop is None:
            images, masks = data
            images, masks = self.augmentation(images, masks, training=True)
            weights = None
        else:
            images, masks, weights = self.crop(*data)
            both = ops.concatenate([ops.cast(masks, "float32"), weights], axis=-1)
            images, both = self.augmentation(images, both, training=True)
            masks, weights = both[..., :1], both[..., 1:]
        loss, predictions, gradients = self._gradients(images, masks, weights)
        self.optimizer.apply(gradients, self.trainable_variables)
        # compute_loss divides by the replica count (the gradients are summed); log the true loss.
        loss = loss * tf.distribute.get_replica_context().num_replicas_in_sync
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                # Integer weights: IoU counts are integers, and Keras warns about float weights for them.
                metric.update_state(masks, predictions, sample_weight=None if weights is None else ops.cast(weights, "int32"))
        return self._reducible_logs(self.get_metrics_result())

    def _forward_backward(self, images, masks, weights):
        with tf.GradientTape() as tape:
            predictions = self(images, training=True)
            loss = self.compute_loss(x=images, y=masks, y_pred=predictions, sample_weight=weights, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)  # mixed precision: loss scaling
        return loss, predictions, tape.gradient(scaled_loss, self.trainable_variables)

    def test_step(self, data):
        return self._reducible_logs(super().test_step(data))

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
        super()._maybe_symbolic_build(data_batch=data_batch)

    def _reducible_logs(self, logs):
        # Across workers Keras reduces each log value with a mean over axis 0, which a scalar lacks.
        if distribute.num_workers(self.distribute_strategy) > 1:
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs
