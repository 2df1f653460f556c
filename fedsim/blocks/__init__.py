"""Pure building blocks: no Flower, no config groups, only numpy (or torch) and the task interface.

Compressors, samplers, clipping, patterns, local solvers, stepsizes, robust aggregators and
attacks; strategies and clients compose them.
"""
