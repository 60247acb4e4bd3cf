"""What crosses the wire: input events, output records, internal messages, their codec."""
