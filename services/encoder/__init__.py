"""The encoder: e4e (encoder4editing) from FFHQ-aligned faces to StyleGAN2 W+ codes.

* `model`: the network, preprocessing and the strict loader of `e4e_ffhq_encode.pt` (pure PyTorch).
* `refine`: target preprocessing and reconstruction losses for the generator's `low_prior` strategy.
* `random_weights`: random checkpoints in the official layout (tests, `--random-weights` demos).
* `service`: the gRPC servicer and the `encode` queue stage.
"""
