"""Memory components, one concern per module. Each returns `vramfit.result.Component`s for one GPU."""
