"""Where candles come from (the ground of the data flow): the source interface and its errors,
candle rules, the live ccxt source, the offline demo, CSV files and replay. Nothing here
touches the store or a model."""
