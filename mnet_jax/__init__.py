"""mnet_jax: the MobileNets (V1) width/resolution scaling study in JAX/Flax."""
