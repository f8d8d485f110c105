-- One database per service: each node's issuance log is its own.
CREATE DATABASE payments OWNER ticketing;
CREATE DATABASE node1 OWNER ticketing;
CREATE DATABASE node2 OWNER ticketing;
CREATE DATABASE node3 OWNER ticketing;
CREATE DATABASE node4 OWNER ticketing;
CREATE DATABASE node5 OWNER ticketing;
CREATE DATABASE coordinator OWNER ticketing;
