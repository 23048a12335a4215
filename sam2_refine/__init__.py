"""SAM2 Refiner: a NimbusImage annotation worker that refines rough polygons with SAM2."""

__version__ = "1.0.0"
