"""The `i2v` console script: above the flows it runs (`i2v run`) and the simulator."""
