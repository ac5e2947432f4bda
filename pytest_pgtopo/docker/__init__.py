"""The docker backend's own pieces: the engine, images, and containers running one server each."""
