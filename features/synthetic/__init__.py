"""Data to try the product on: a generated loyalty programme with planted behaviour and ground truth
(`generator`), and the real CDNOW purchase log converted to the data contract (`cdnow`)."""
