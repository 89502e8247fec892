"""The networks: attention modules and kinds, ResNet-50 builders, taps, preprocessing."""
