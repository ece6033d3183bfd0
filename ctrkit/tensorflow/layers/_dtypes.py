"""Dtype rules shared by the TensorFlow blocks (torch's promotion and autocast choices, in Keras)."""

from __future__ import annotations

import tensorflow as tf

_LOW = (tf.bfloat16, tf.float16)


def widened(dtype: tf.DType | str) -> tf.DType:
    """float32 for bf16/fp16, ``dtype`` otherwise: where torch keeps sums of many terms out of autocast."""
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in _LOW else dtype


def promoted(a: tf.DType | str, b: tf.DType | str) -> tf.DType:
    """The float dtype torch's type promotion gives ``a op b`` (bf16 + fp32 -> fp32, bf16 + fp16 -> fp32)."""
    a, b = tf.as_dtype(a), tf.as_dtype(b)  # Keras variables report their dtype as a string
    if a == b:
        return a
    if a in _LOW and b in _LOW:
        return tf.float32
    return a if a.size > b.size else b
