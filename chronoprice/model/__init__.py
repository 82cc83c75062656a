"""The forecasters: features, the Keras network and its training, serving engines, the artifact."""
