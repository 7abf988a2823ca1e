"""Implementation of cunet.ops, one module per kernel family; `_ops.core` dispatches."""
