"""The training wrapper: augmentation inside the replicated train step, the network's own compute
optionally XLA-compiled, and saving that writes the network alone.

`model.fit` runs `train_step` once per replica on the replica's device (`tf.distribute`), so the
augmentation runs where the model trains, not in the `tf.data` map. Keras' `RandomRotation` has no
XLA kernel, so with `jit_network` only the forward and backward pass of the network is compiled
(the optimizer update stays outside: it synchronizes replicas, which a nested XLA function cannot).
"""

from pathlib import Path

import keras
import tensorflow as tf

from stoneseg import distribute
from stoneseg.files import partial_path


class SegmentationTrainer(keras.Model):
    """Trains `network` on batches augmented by `augmentation`; `save()` saves `network` only."""

    def __init__(self, network, augmentation, jit_network=False, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.augmentation = augmentation
        self._gradients = tf.function(self._forward_backward, jit_compile=True) if jit_network else self._forward_backward

    def build(self, input_shape):
        self.augmentation.build(input_shape)

    def call(self, images, training=False):
        return self.network(images, training=training)

    def train_step(self, data):
        images, masks = data
        images, masks = self.augmentation(images, masks, training=True)
        loss, predictions, gradients = self._gradients(images, masks)
        self.optimizer.apply(gradients, self.trainable_variables)
        # compute_loss divides by the replica count (the gradients are summed); log the true loss.
        loss = loss * tf.distribute.get_replica_context().num_replicas_in_sync
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(masks, predictions)
        return self._reducible_logs(self.get_metrics_result())

    def _forward_backward(self, images, masks):
        with tf.GradientTape() as tape:
            predictions = self(images, training=True)
            loss = self.compute_loss(x=images, y=masks, y_pred=predictions, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)  # mixed precision: loss scaling
        return loss, predictions, tape.gradient(scaled_loss, self.trainable_variables)

    def test_step(self, data):
        return self._reducible_logs(super().test_step(data))

    def save(self, filepath, overwrite=True, **kwargs):
        """Write the network alone to `filepath` (a `.keras` file), atomically."""
        filepath = Path(filepath)
        if filepath.exists() and not overwrite:
            raise FileExistsError(f"{filepath} exists; pass overwrite=True to replace it")
        with partial_path(filepath) as partial:
            self.network.save(partial, overwrite=True, **kwargs)

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
        super()._maybe_symbolic_build(data_batch=data_batch)

    def _reducible_logs(self, logs):
        # Across workers Keras reduces each log value with a mean over axis 0, which a scalar lacks.
        if distribute.num_workers(self.distribute_strategy) > 1:
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs
