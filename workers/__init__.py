"""The Faust worker: wires metaguide's pure pieces to Kafka. Only this package imports faust."""
