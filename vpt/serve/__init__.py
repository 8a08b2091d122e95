"""``vpt serve``: many prompt-tuned tasks behind one HTTP endpoint, on one shared frozen backbone, batched
across tasks. ``pool`` (the models, engine-independent), ``app`` (the HTTP routes), ``lit`` (LitServe,
the ``[serve]`` extra), ``ray_app`` (Ray Serve, the ``[ray]`` extra). docs/serve.md is the guide."""
