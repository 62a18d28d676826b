"""Measurement: parameters, multiply-adds, throughput and peak memory."""
