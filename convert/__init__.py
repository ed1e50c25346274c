"""Conversion of trained models to fully int8 TFLite for the CPU and the Coral Edge TPU."""
